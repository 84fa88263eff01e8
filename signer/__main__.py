"""`python -m signer` runs the `signer` command."""

from signer.cli.main import main

main()
