-- Retention removes failed deliveries by the time they were recorded.
CREATE INDEX failed_deliveries_by_time ON failed_deliveries (failed_at_ms);
