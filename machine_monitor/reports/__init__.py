"""What people read: evaluation metrics, plots and the HTML scan report."""
