from locallearn.cli.main import main

raise SystemExit(main())
