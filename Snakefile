from snakemake.utils import min_version

min_version("9.1")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/proteins.smk"
include: "rules/unique.smk"
include: "rules/families.smk"
include: "rules/embeddings.smk"
include: "rules/pretrain.smk"
include: "rules/bacformer.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        rules.proteins.input,
        rules.families.input,
        rules.embeddings.input,
        rules.bacformer.input,
        # The files `snakemake --report` shows.
        rules.report_genomes.output,
        rules.report_families.output,
        rules.report_projection.output,


onsuccess:
    print_quarantine_summary()


# On failure too: a run that stopped after some genomes were quarantined still names them.
onerror:
    print_quarantine_summary()
