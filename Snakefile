from snakemake.utils import min_version

min_version("9.1")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/proteins.smk"
include: "rules/unique.smk"


rule all:
    default_target: True
    input:
        rules.proteins.input,


onsuccess:
    print_quarantine_summary()
