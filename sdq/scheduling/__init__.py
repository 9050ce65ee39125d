"""Pure decisions about how a fleet of unequal workers shares work: the speed model (`speed`) and
chunk sizes, claims and straggler backups (`scheduling`). No Redis, no ML library."""
