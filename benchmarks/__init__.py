"""The benchmark harness: presets -> stages -> records -> tables.

DESIGN, from the top down (imports point down only):

* ``run`` (``python -m benchmarks.run``, ``vfmtok bench`` through ``command``) composes a preset (``config``,
  hydra, validated), checks weights and disk (``weights``, ``preflight``) and runs every tokenizer of the catalog;
* ``pipeline`` runs the tokenizer stages (train or load, reconstruction, probing, throughput) and hands discrete
  tokenizers to ``generation`` (tokens, GPT training with gFID along the way, the CFG sweep, or released GPTs);
  both stand on ``context`` (the run's configuration, data, device and stage cache) and use only the library's
  public API and the :class:`vfmtok.Tokenizer` contract;
* ``stages`` caches every stage result in the library's content-addressed store, keyed by everything it depends
  on, with the wall time and machine of its computation; ``records`` writes one JSON record per run;
  ``metric_specs`` describes every metric key once (title, direction, unit, decimals, regression tolerance,
  table columns); ``tables`` and ``figures`` are pure functions of the records; ``regress`` gates the smoke
  preset's record against ``results/baselines/smoke.json``;
* beside the pipeline: ``flops`` (FLOPs per image of the models) and ``perf_table`` (the table of a
  ``nox -s perf`` run, one per device).
"""
