-- Who settled a row's quantities: 0 nobody, 1 the proxy's usage event, 2 the counter
-- (see the SQLite migration of the same name).
ALTER TABLE usage_events ADD COLUMN settled SMALLINT NOT NULL DEFAULT 0;
