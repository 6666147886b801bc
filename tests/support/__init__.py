"""Helpers the integration and end-to-end tests share: real git repositories, the started stack."""
