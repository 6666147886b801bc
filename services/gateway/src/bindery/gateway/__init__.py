"""Bindery's gateway: launch pages, BinderHub's /build event stream, the proxy to sessions."""
