DROP TABLE notification_preferences;
DROP TABLE device_tokens;
DROP TABLE outbox;
