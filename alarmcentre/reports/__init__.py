"""Reports for the social service and the centre's supervisors."""
