from acculturate.cli import main

raise SystemExit(main())
