BEGIN TRANSACTION;
CREATE TABLE defects (
	id INTEGER NOT NULL, 
	image_row_id INTEGER NOT NULL, 
	rejected BOOLEAN NOT NULL, 
	x1 FLOAT NOT NULL, 
	y1 FLOAT NOT NULL, 
	x2 FLOAT NOT NULL, 
	y2 FLOAT NOT NULL, 
	defect_type VARCHAR(64) NOT NULL, 
	confidence FLOAT NOT NULL, 
	source VARCHAR(255) NOT NULL, 
	edge_type VARCHAR(64), 
	edge_confidence FLOAT, 
	severity VARCHAR(16), 
	likely_causes TEXT NOT NULL, 
	description TEXT, 
	recommended_action TEXT, 
	measurements TEXT, 
	PRIMARY KEY (id), 
	FOREIGN KEY(image_row_id) REFERENCES images (id)
);
INSERT INTO "defects" VALUES(1,1,0,10.5,20.0,42.25,60.0,'short',0.93,'cloud:builtin','spur',0.41,'critical','["under-etching"]','Copper bridges two conductors.','Scrap the board.',NULL);
INSERT INTO "defects" VALUES(2,1,1,100.0,100.0,110.0,112.0,'pin-hole',0.2,'cloud:builtin',NULL,NULL,NULL,'[]',NULL,NULL,NULL);
CREATE TABLE images (
	id INTEGER NOT NULL, 
	run_id INTEGER NOT NULL, 
	image_id VARCHAR(255) NOT NULL, 
	image TEXT NOT NULL, 
	template TEXT, 
	status VARCHAR(16) NOT NULL, 
	error TEXT, 
	detector VARCHAR(255), 
	analyzer VARCHAR(255), 
	cloud_error TEXT, 
	bytes_to_cloud BIGINT NOT NULL, 
	bytes_from_cloud BIGINT NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(run_id) REFERENCES runs (id)
);
INSERT INTO "images" VALUES(1,1,'00001','boards/00001_test.jpg','boards/00001_temp.jpg','ok',NULL,'centernet','builtin',NULL,12345,678);
INSERT INTO "images" VALUES(2,1,'00002','boards/00002_test.jpg',NULL,'error','truncated image file','centernet',NULL,NULL,0,0);
CREATE TABLE runs (
	id INTEGER NOT NULL, 
	started_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	command TEXT NOT NULL, 
	config TEXT NOT NULL, 
	images INTEGER, 
	ok INTEGER, 
	failed INTEGER, 
	defects INTEGER, 
	PRIMARY KEY (id)
);
INSERT INTO "runs" VALUES(1,'2026-12-04 16:03:22.137431','2026-12-04 16:03:22.145760','aivd inspect boards/ --out out','{"detector": "centernet", "out": "out"}',2,1,1,1);
CREATE TABLE timings (
	image_row_id INTEGER NOT NULL, 
	stage VARCHAR(64) NOT NULL, 
	ms FLOAT NOT NULL, 
	PRIMARY KEY (image_row_id, stage), 
	FOREIGN KEY(image_row_id) REFERENCES images (id)
);
INSERT INTO "timings" VALUES(1,'read',1.5);
INSERT INTO "timings" VALUES(1,'detect',12.25);
INSERT INTO "timings" VALUES(1,'total',54.25);
CREATE INDEX ix_images_run_id ON images (run_id);
CREATE INDEX ix_defects_defect_type ON defects (defect_type);
CREATE INDEX ix_defects_image_row_id ON defects (image_row_id);
COMMIT;
