"""Cloud Functions, locally: the API, the seeded functions and gen1's front end."""
