"""One module per stage: its Prefect flow, the options of its task and what it validates.
`runner.py` holds what they share (the engine choice, the stage task, skipping finished stages)."""
