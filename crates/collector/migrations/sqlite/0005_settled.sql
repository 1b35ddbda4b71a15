-- Who settled a row's quantities (reserve, then settle: e.g. LLM tokens): 0 nobody
-- (what was reserved, or a fixed price), 1 the proxy's usage event, 2 the counter.
-- The counter's settlement wins over the proxy's, which wins over the reservation.
ALTER TABLE usage_events ADD COLUMN settled INTEGER NOT NULL DEFAULT 0;
