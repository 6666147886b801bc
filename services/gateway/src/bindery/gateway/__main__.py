"""`python -m bindery.gateway`: run the gateway service."""

from bindery.gateway.app import main

main()
