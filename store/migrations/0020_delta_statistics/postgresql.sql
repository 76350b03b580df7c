-- The planner estimates the pending rollup deltas as the density the table's last
-- vacuum or analyze counted, times its pages now. The queue refills the same pages
-- between folds, so a count taken just after a fold calls it empty however full it
-- gets, and the views' check for pending deltas may then compare every folded row of
-- a range with the whole queue, row by row (a city-wide day took 7.8-85 s so,
-- docs/benchmarks.md). Autovacuum counts at whatever moment it comes; the hub, which
-- knows when its folds run, vacuums and analyzes this table itself while a round's
-- deltas wait (cityhub_store::rollups::FoldRounds). A vacuum against wraparound still
-- runs whatever this says.
ALTER TABLE rollup_delta SET (autovacuum_enabled = false);
