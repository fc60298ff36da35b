-- The exporter's running totals (issue 16, restart-fast reads): the counters and merged
-- histogram sketches of every final hour before `upto`, as api/exporter.py keeps them in
-- memory. A starting API reads this one row instead of re-merging all retained history (a year
-- of day rows of every request series took 20 s), then adds what is newer; every API process
-- writes it forward only (a row never goes back to an older `upto`). One row: bounded.
CREATE TABLE exporter_state (
    id smallint PRIMARY KEY CHECK (id = 1),
    upto timestamptz NOT NULL,
    state jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
