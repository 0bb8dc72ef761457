-- Tokens issued before this instant are refused (the gateway learns it from /revocations):
-- a password change moves it to the next whole second.
ALTER TABLE auth.users ADD COLUMN tokens_not_before timestamptz NOT NULL DEFAULT 'epoch';
CREATE INDEX users_tokens_not_before ON auth.users (tokens_not_before);
