DROP INDEX scans_allergy_holds;
