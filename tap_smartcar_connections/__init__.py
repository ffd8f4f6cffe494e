"""Singer tap for Smartcar vehicle connections."""
