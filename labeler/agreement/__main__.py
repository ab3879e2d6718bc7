from labeler.agreement.compute import main

raise SystemExit(main())
