"""What a run reports: result rows, metrics, open-set rules, the privacy ledger, calibration."""
