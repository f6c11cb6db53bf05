"""Models: specs, profiles, run files, file-name safety and clients. The only package that names a provider.

Core code asks a spec's profile what a model can do (`ModelSpec.profile`, `ModelSpec.deterministic`), never which
provider serves it.
"""

from agents.models.clients import ModelHandle, chat_model, clear_cache, named_chat_model
from agents.models.names import safe_name
from agents.models.profiles import DEFAULT_PROFILE, PROFILES, SMALL_PROFILE, ModelProfile
from agents.models.runfile import RunModels, check_annotator_names, load_run_config, resolve_models
from agents.models.spec import DEFAULT_ANNOTATORS, DEFAULT_SUPERVISOR, PROVIDERS, ModelSpec, Role, parse_model_spec

__all__ = [
    "DEFAULT_ANNOTATORS",
    "DEFAULT_PROFILE",
    "DEFAULT_SUPERVISOR",
    "PROFILES",
    "PROVIDERS",
    "SMALL_PROFILE",
    "ModelHandle",
    "ModelProfile",
    "ModelSpec",
    "Role",
    "RunModels",
    "chat_model",
    "check_annotator_names",
    "clear_cache",
    "load_run_config",
    "named_chat_model",
    "parse_model_spec",
    "resolve_models",
    "safe_name",
]
