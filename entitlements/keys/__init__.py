"""API keys and their roles."""

from entitlements.keys.cache import KeyCache
from entitlements.keys.schemas import ROLES, KeyCreate, KeyCreated, KeyOut, KeysPage, Role
from entitlements.keys.service import (
    KEY_PREFIX,
    Caller,
    create_key,
    find_caller,
    hash_key,
    is_active_key_of_role,
    list_keys,
    revoke_key,
    rotate_key,
)

__all__ = [
    "KEY_PREFIX",
    "ROLES",
    "Caller",
    "KeyCache",
    "KeyCreate",
    "KeyCreated",
    "KeyOut",
    "KeysPage",
    "Role",
    "create_key",
    "find_caller",
    "hash_key",
    "is_active_key_of_role",
    "list_keys",
    "revoke_key",
    "rotate_key",
]
