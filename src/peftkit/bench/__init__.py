"""Benchmarks behind the README tables: ``peftkit bench NAME [key=value ...]``.

Each entry names a module with ``main(overrides: list[str]) -> int``; it writes JSON, a Markdown table and a
PNG plot next to each other and prints the table.
"""

BENCHES: dict[str, tuple[str, str]] = {
    "demo": ("peftkit.bench.demo", "the main job: methods on MiniLM + BBC News, one table (make demo)"),
    "memory": ("peftkit.bench.memory_sweep",
               "MEFT memory: saved activations and peak per step vs depth and length"),
    "meft_accuracy": ("peftkit.bench.meft_accuracy", "MEFT1/2/3 vs full FT / LoRA / adapter accuracy"),
    "meft_calibration_diag": ("peftkit.bench.meft_calibration_diag",
                              "why MEFT's anchors miss under bf16 autocast: per-layer errors across batches"),
    "deft": ("peftkit.bench.deft", "PEFT vs DEFT: task metric and activation density, several seeds"),
    "density": ("peftkit.bench.density", "activation density of a saved run (fp32 and bf16)"),
    "sparsity": ("peftkit.bench.sparsity",
                 "calibrated activation sparsity: PEFT vs PEFT + DEFT Pareto (accuracy vs MLP density)"),
    "sparsity_fixed": ("peftkit.bench.sparsity_fixed",
                       "diagnostic: every sparsity-bench model at one reference model's fixed thresholds"),
    "sparse_speed": ("peftkit.bench.sparse_speed", "sparse MLP vs dense: MLP-only and end-to-end latency"),
    "ops": ("peftkit.bench.point_ops", "speed of FPS / kNN / grouping / Chamfer at the papers' sizes"),
    "point": ("peftkit.bench.point",
              "KiCad classification: full FT, linear probe, LoRA, pretrained vs random"),
    "point_peft": ("peftkit.bench.point_peft", "Point-PEFT vs baselines and ablations on KiCad"),
    "point_peft_cost": ("peftkit.bench.point_peft_cost", "Point-PEFT step time, peak and profile vs full FT"),
}
