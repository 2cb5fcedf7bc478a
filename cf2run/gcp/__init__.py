"""The Google APIs as cf2run calls them: clients, credentials, and what their answers mean."""
