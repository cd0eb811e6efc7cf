"""The training layer: what the recipes share (arguments, data, loading, callbacks, reporting, hub, faults,
the chapter helpers). The core (`hf_gpt_scratch`'s config, modeling, loss, tokenization and convert) never
imports it; `lint-imports` checks that (the contract is in pyproject.toml)."""
