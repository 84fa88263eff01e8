"""`python -m signer` runs the `signer` command."""

from signer.cli import main

main()
