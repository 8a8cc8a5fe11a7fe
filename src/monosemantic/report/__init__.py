"""What a researcher reads after `dvc repro`: the summary for pull requests (and the browser)."""
