"""``python -m akd_edge ...``: the same commands as ``akd-edge ...`` (for launchers such as torchrun)."""

from akd_edge.cli.main import main

main()
