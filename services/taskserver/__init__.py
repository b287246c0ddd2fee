"""The task-server service: serve a campaign's methods through Parsl on an HPC login node."""
