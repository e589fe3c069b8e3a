DROP INDEX rfid_cards_by_school;
DROP INDEX scans_recent_by_school;
