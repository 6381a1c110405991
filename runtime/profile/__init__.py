"""`jetspec-compile profile`: latency profile of an artifact over tree budgets.

One run measures, per budget B: tau (tokens committed per round), tokens/s, per-stage latency (draft,
verify, host, commit: median and p90 over rounds), the host-overhead share of a round, the share of rounds
run at each budget (and in plain steps, for an adaptive artifact), and the speedup over the same
artifact's ar_step decoding and over Hugging Face ``generate()`` (greedy, same weights). Every repetition
runs every method on every prompt; ratios are taken within a repetition and the medians over repetitions
are reported.

An artifact exported with a lookup chain (``--lookup L``) is measured twice at every budget in the same
run: with the chain (``budgets``) and with it switched off at run time (``lookup.off``: the same graphs and
caches, the draft given chain_len 0, so the L chain rows are verified as padding), both beside Hugging Face
prompt-lookup decoding.

Budgets are static in the compiled graphs. The artifact's own budget runs the artifact's graphs. For any
other budget the budget-dependent graphs (draft, verify) are rebuilt from the artifact's configs and
weights, captured and compiled with the artifact's backend into ``<out>/sweep/b<B>/`` (or ``--sweep-dir``;
cached: keyed by the artifact's file hashes + budget, so a re-run does not recompile); the
budget-independent prefill and ar_step graphs are the artifact's own. Outputs: profile.json, profile.csv,
speedup.png, tau.png, stages.png.

``--autotune`` records the budget with the best measured tokens/s in the artifact's manifest (field
``autotune``; manifest.json is not among the hashed files). The artifact's compiled budget stays what it
is: the record says which budget to re-export with, and where the sweep's compiled graphs for it are.

Modules: ``sweep`` (compile draft + verify at other budgets, one decoder per budget), ``measure`` (timed
runs of every method), ``report`` (profile.json rows, CSV, plots, the printed table), ``run``
(``profile_artifact``: the three in order), ``cli`` (the subcommand).
"""

from __future__ import annotations

from .cli import DEFAULT_BUDGETS, parse_budgets, register, run_profile
from .measure import HF_LOOKUP, STAGES, hf_generate, machine_info
from .report import CSV_COLUMNS, format_table, json_safe, write_outputs, write_plots
from .run import profile_artifact
from .sweep import SWEEP_GRAPHS, SWEEP_META, SweepGraphs, artifact_key, build_sweep, sweep_spec

__all__ = ["CSV_COLUMNS", "DEFAULT_BUDGETS", "HF_LOOKUP", "STAGES", "SWEEP_GRAPHS", "SWEEP_META", "SweepGraphs",
           "artifact_key", "build_sweep", "format_table", "hf_generate", "json_safe", "machine_info",
           "parse_budgets", "profile_artifact", "register", "run_profile", "sweep_spec", "write_outputs",
           "write_plots"]
