-- Version 1: tasks and the inbound deliveries that move them.
CREATE TABLE tasks (
    pk               INTEGER PRIMARY KEY,
    video_id         TEXT UNIQUE,              -- the provider's id; NULL until it answers our submit
    token_hash       TEXT NOT NULL UNIQUE,     -- sha256 of the callback token (the token is a credential)
    status           TEXT NOT NULL,            -- submitting, queued, in_progress, completed, failed
    model            TEXT NOT NULL,
    video            TEXT NOT NULL,            -- JSON: the provider's object as we last know it
    request          TEXT NOT NULL,            -- JSON: the client's submit body
    callback_url     TEXT,                     -- the client's own subscriber for this task
    idem_scope       TEXT,
    idem_key         TEXT,
    request_hash     TEXT,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    terminal_at      REAL,
    resolved_by      TEXT,                     -- webhook, poll, deadline
    deliveries       INTEGER NOT NULL DEFAULT 0,
    duplicates       INTEGER NOT NULL DEFAULT 0,
    polls            INTEGER NOT NULL DEFAULT 0,
    anomalies        INTEGER NOT NULL DEFAULT 0,
    last_delivery_at REAL,
    next_poll_at     REAL,                     -- NULL once terminal
    poll_failures    INTEGER NOT NULL DEFAULT 0,
    confirm_pending  INTEGER NOT NULL DEFAULT 0, -- a thin/unsigned delivery awaits our confirming GET
    expires_at       REAL,
    UNIQUE (idem_scope, idem_key)
);
CREATE INDEX tasks_due ON tasks (next_poll_at) WHERE next_poll_at IS NOT NULL;
CREATE INDEX tasks_status ON tasks (status, pk);

CREATE TABLE deliveries (
    pk           INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,         -- dlv_...
    dedupe_key   TEXT NOT NULL UNIQUE,
    task_pk      INTEGER REFERENCES tasks (pk) ON DELETE SET NULL,
    video_id     TEXT,
    route        TEXT NOT NULL,                -- task (per-task URL) or workspace
    verified_by  TEXT NOT NULL,                -- standard-v1, standard-v1a, openrouter, unsigned
    headers      TEXT NOT NULL,                -- JSON, secrets redacted
    body         BLOB NOT NULL,
    event_type   TEXT,
    status       TEXT,
    outcome      TEXT NOT NULL,
    repeats      INTEGER NOT NULL DEFAULT 0,
    received_at  REAL NOT NULL,
    last_seen_at REAL NOT NULL
);
CREATE INDEX deliveries_video ON deliveries (video_id, pk);
CREATE INDEX deliveries_unmatched ON deliveries (video_id) WHERE outcome = 'unmatched';
