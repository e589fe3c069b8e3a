DROP TABLE facts_epoch;
