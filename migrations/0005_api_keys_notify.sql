-- Every process caches the API keys it has seen (entitlements/keys/cache.py). Any change to a key row
-- (a revocation, a rotation, a deletion by hand) tells every process at once, on commit, which key to
-- forget: the trigger fires whatever made the change, the service or an operator's SQL.
CREATE FUNCTION api_keys_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('moments_api_keys', OLD.id::text);
    RETURN NULL;
END;
$$;

-- Stamping last_used_at changes nothing a cache holds: only the columns that decide who may call.
CREATE TRIGGER api_keys_notify_update AFTER UPDATE OF revoked_at, role, name, key_hash ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_notify();
CREATE TRIGGER api_keys_notify_delete AFTER DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_notify();
