"""What shoppers and operators see: the embeddable widget, the demo store page and the admin dashboard."""
