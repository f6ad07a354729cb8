from bacflow.report import models_that_ran

REPORT = OUTDIR / "report"
# The front page (report/workflow.rst) sees nothing of the workflow but `config`: it gets the models that made
# the results from there, read from their metadata when `snakemake --report` loads the workflow.
config["models_that_ran"] = models_that_ran(BACFORMER_DIR / "genomes.parquet")


rule report_genomes:
    input:
        qc=OUTDIR / "qc" / "genomes.parquet",
        bacformer=BACFORMER_DIR / "genomes.parquet",
    output:
        proteins=report(
            REPORT / "proteins_per_genome.png",
            caption="../report/proteins_per_genome.rst",
            category="Genomes",
        ),
        flags=report(
            REPORT / "qc_flags.html",
            caption="../report/qc_flags.rst",
            category="Genomes",
        ),
    log:
        OUTDIR / "logs" / "report_genomes.log",
    benchmark:
        OUTDIR / "benchmarks" / "report_genomes.tsv"
    localrule: True
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        limit=BACFORMER["max_n_proteins"],
    script:
        "../scripts/report_genomes.py"


rule report_families:
    input:
        FAMILIES,
    output:
        report(
            REPORT / "family_sizes.png",
            caption="../report/family_sizes.rst",
            category="Protein families",
        ),
    log:
        OUTDIR / "logs" / "report_families.log",
    benchmark:
        OUTDIR / "benchmarks" / "report_families.tsv"
    localrule: True
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../scripts/report_families.py"


rule report_projection:
    input:
        genomes=BACFORMER_DIR / "genomes.parquet",
        qc=OUTDIR / "qc" / "genomes.parquet",
    output:
        report(
            REPORT / "genome_projection.png",
            caption="../report/genome_projection.rst",
            category="Bacformer",
        ),
    log:
        OUTDIR / "logs" / "report_projection.log",
    benchmark:
        OUTDIR / "benchmarks" / "report_projection.tsv"
    localrule: True
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../scripts/report_projection.py"


# The files `snakemake --report` shows; the `all` target makes them.
REPORT_FIGURES = [
    *rules.report_genomes.output,
    *rules.report_families.output,
    *rules.report_projection.output,
]
