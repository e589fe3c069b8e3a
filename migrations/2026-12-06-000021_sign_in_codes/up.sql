-- One-time sign-in codes sent by a person's channel (imported people have no password).
-- One live code a person: asking again replaces it. Only the code's MAC is kept.
CREATE TABLE sign_in_codes (
    user_id TEXT PRIMARY KEY REFERENCES users (id),
    code_mac TEXT NOT NULL,
    -- attempts made at it, right or wrong; past the limit it is void
    attempts INTEGER NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    created_at TIMESTAMP NOT NULL
);
