"""`cf2run discover`: from a project's live 1st-gen Cloud Functions to a manifest.

    inventory        list (v2 API, 1st and 2nd gen) and read (v1 API, gen1's own shape + IAM)
    download         the deployed source (GenerateDownloadUrl, else sourceArchiveUrl)
    archive          the zip checked (integrity, paths, sizes) and extracted
    signature        the signature the source itself registers
    names            Cloud Run service names for gen1 function ids
    settings         one pure function per gen1 setting -> manifest value + origin
    entry            one function's manifest entry, from `settings`
    manifest_writer  the YAML text, each value with its origin as a comment
    state            what the last run wrote (reruns keep the user's edits)
    run              the whole command, writing only once everything is read and checked
"""
