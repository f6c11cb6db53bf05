"""Typed state: the method's objects as Pydantic models (`state.models`) and the input error type (`state.errors`).

Kept import-light on purpose: `diziner analyze` must not pay for Pydantic or LangGraph.
"""
