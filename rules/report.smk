rule report_genomes:
    input:
        qc=PLAN.outdir / "qc" / "genomes.parquet",
        bacformer=PLAN.bacformer_dir / "genomes.parquet",
        buckets=after_buckets(
            outputs=[
                PLAN.bacformer_report / "proteins_per_genome.png",
                PLAN.bacformer_report / "qc_flags.html",
            ],
            inputs=[
                PLAN.outdir / "qc" / "genomes.parquet",
                PLAN.bacformer_dir / "genomes.parquet",
            ],
        ),
    output:
        proteins=report(
            PLAN.bacformer_report / "proteins_per_genome.png",
            caption="../report/proteins_per_genome.rst",
            category="Genomes",
        ),
        flags=report(
            PLAN.bacformer_report / "qc_flags.html",
            caption="../report/qc_flags.rst",
            category="Genomes",
        ),
    log:
        PLAN.report_logs.log("report_genomes"),
    benchmark:
        PLAN.report_logs.benchmark("report_genomes")
    localrule: True
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        limit=PLAN.bacformer["max_n_proteins"],
    script:
        "../scripts/report_genomes.py"


rule report_families:
    input:
        PLAN.families,
    output:
        report(
            PLAN.outdir / "report" / "family_sizes.png",
            caption="../report/family_sizes.rst",
            category="Protein families",
        ),
    log:
        PLAN.logs.log("report_families"),
    benchmark:
        PLAN.logs.benchmark("report_families")
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
        genomes=PLAN.bacformer_dir / "genomes.parquet",
        qc=PLAN.outdir / "qc" / "genomes.parquet",
        buckets=after_buckets(
            outputs=[PLAN.bacformer_report / "genome_projection.png"],
            inputs=[
                PLAN.bacformer_dir / "genomes.parquet",
                PLAN.outdir / "qc" / "genomes.parquet",
            ],
        ),
    output:
        report(
            PLAN.bacformer_report / "genome_projection.png",
            caption="../report/genome_projection.rst",
            category="Bacformer",
        ),
    log:
        PLAN.report_logs.log("report_projection"),
    benchmark:
        PLAN.report_logs.benchmark("report_projection")
    localrule: True
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../scripts/report_projection.py"
