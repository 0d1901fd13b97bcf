"""The papers' experiment configs; installed as the package `tlunet.experiments`.

One folder per experiment: `config.yaml` (what `tlunet experiment NAME` runs) and `README.md` (the
paper's numbers beside ours, and the commands that made them). Add a sixth paper by adding a folder.
"""
