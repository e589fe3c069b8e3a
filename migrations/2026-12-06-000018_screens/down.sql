DROP TABLE screen_pairings;
DROP TABLE screens;
