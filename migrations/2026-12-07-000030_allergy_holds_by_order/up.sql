-- A scan held for an allergy raises its alert once per order: the hold is counted among the
-- order's scans. No index had scans by order, so each count read every scan ever made. Only
-- held scans take an entry.
CREATE INDEX scans_allergy_holds ON scans (order_id) WHERE verdict = 'allergy_hold';
