"""End to end: real processes (`rollbackd run`, the example app, the rollbackd CLI), every
module marked e2e; `scripts/test -m "not e2e"` leaves them out."""
