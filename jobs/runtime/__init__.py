"""What every command shares to run at all: its command line (cli), Ray (cluster), the one runner of
every job's units of work (runner: resume, retries, progress, the failure line), stopping on a
signal (stopping), progress lines (progress), silencing Ray's benign noise (noise) and the commands
it prints for the user to run next (hints).

One home so that every job fails, stops, reports and resumes the same way (docs/design.md §3).
Imported by the commands in jobs/ and by jobs.mapping / jobs.evaluation; imports only lower layers
(workers, storage, models, attribution), never a command or another jobs subpackage.
"""
