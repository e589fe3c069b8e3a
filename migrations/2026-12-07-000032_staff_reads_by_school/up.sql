-- Staff list a school's latest scans and its cards. Neither had an index by school, so each
-- list read every scan, or every card, of the district.
CREATE INDEX scans_recent_by_school ON scans (school_id, received_at, id);
CREATE INDEX rfid_cards_by_school ON rfid_cards (school_id, created_at);
