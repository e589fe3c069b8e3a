-- Schools, their counters and menus, people, guardian links, cards and readers.
-- Ids are UUID text; times are UTC, set by the application.
CREATE TABLE schools (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    time_zone TEXT NOT NULL,
    -- The kitchen's event sequence: bumped in every committing transaction.
    event_seq BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE counters (
    id TEXT PRIMARY KEY,
    school_id TEXT NOT NULL REFERENCES schools (id),
    number INTEGER NOT NULL,
    name TEXT NOT NULL,
    is_open BOOLEAN NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    UNIQUE (school_id, number)
);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    -- NULL only for district admins.
    school_id TEXT REFERENCES schools (id),
    role TEXT NOT NULL,
    display_name TEXT NOT NULL,
    email TEXT UNIQUE,
    phone TEXT UNIQUE,
    password_hash TEXT,
    -- Comma-separated allergen names, lower case.
    allergies TEXT NOT NULL DEFAULT '',
    locale TEXT NOT NULL DEFAULT 'en',
    active BOOLEAN NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX users_school ON users (school_id, role);

CREATE TABLE guardian_links (
    guardian_id TEXT NOT NULL REFERENCES users (id),
    student_id TEXT NOT NULL REFERENCES users (id),
    relationship TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (guardian_id, student_id)
);
CREATE INDEX guardian_links_student ON guardian_links (student_id);

CREATE TABLE refresh_tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id),
    -- SHA-256 of the token; the token itself is never stored.
    token_hash TEXT NOT NULL UNIQUE,
    family_id TEXT NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    revoked_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE meals (
    id TEXT PRIMARY KEY,
    school_id TEXT NOT NULL REFERENCES schools (id),
    name TEXT NOT NULL,
    price_cents BIGINT NOT NULL,
    allergens TEXT NOT NULL DEFAULT '',
    available BOOLEAN NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX meals_school ON meals (school_id);

CREATE TABLE rfid_cards (
    id TEXT PRIMARY KEY,
    school_id TEXT NOT NULL REFERENCES schools (id),
    student_id TEXT NOT NULL REFERENCES users (id),
    card_uid TEXT NOT NULL UNIQUE,
    -- active, blocked, lost, replaced
    status TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE readers (
    id TEXT PRIMARY KEY,
    school_id TEXT NOT NULL REFERENCES schools (id),
    counter_id TEXT NOT NULL REFERENCES counters (id),
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    last_seen_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL
);
