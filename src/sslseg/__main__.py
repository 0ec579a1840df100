"""`python -m sslseg` runs the command line."""

from sslseg.cli import main

main()
