"""Worker side: data, model, loss, metric, training and the trial loop."""
